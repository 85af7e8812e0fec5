"""The ``nashmoe train``, ``eval``, ``generate`` and ``compare`` subcommands (argparse; each
module exposes ``add_arguments(parser)`` and ``run(args) -> int``)."""
