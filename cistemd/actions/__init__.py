"""One module per cisTEM action: parameters with cisTEM defaults, tasks, and result recording."""
