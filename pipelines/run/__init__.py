"""Run: `make all`, the whole pipeline as a sequence of commands a user could type, and its report."""
