"""The ``lem`` subcommands, one module each: ``run``, ``lookahead``, ``results``, ``schedule``.
Each module has ``add_parser(subparsers)`` and the function the parser dispatches to."""
