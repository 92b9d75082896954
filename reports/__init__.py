"""Reports from run directories: MFU, scaling efficiency, scaling laws, HTML with plots (no torch)."""
