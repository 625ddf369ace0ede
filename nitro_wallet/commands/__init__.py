"""Subcommands of the ``nitro-wallet`` CLI (see ``nitro_wallet.cli``)."""
