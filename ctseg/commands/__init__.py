"""One module per ``ctseg`` verb: ``add_arguments(parser)`` and ``run(args) -> int``."""
