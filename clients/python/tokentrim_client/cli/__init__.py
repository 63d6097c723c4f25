"""The tokentrim-client command line."""
