"""The `hybridinfer` command line: thin click commands over the library."""
