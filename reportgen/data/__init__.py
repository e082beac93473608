"""Data shipped with reportgen: the demo checkpoint and the JSON schema."""
