"""One module per `wiretrail` subcommand."""
