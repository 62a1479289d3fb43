"""graph: workflow formats (API / UI / PNG), widget specs, validation and the executor. The
node registry is handed in by the caller (defs/cli), never imported. May import: io (and the
floors below graph when a node type needs them)."""
