"""The rule language: schema, loader with path:line:col diagnostics, expression compiler, lint, tests."""
