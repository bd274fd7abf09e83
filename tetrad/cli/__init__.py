"""Client subcommands that talk to the running daemon or render events."""
