"""One module per `ils` subcommand: HELP, add_arguments(parser), run(args, cfg)."""
