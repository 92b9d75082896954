"""The ``recscale`` command line, local launching, TorchX components and schedulers."""
