"""Process wiring beyond one machine: runtimes as Ray actors (``modelrunner serve --ray``).

Above the servers in the layering (it starts them); imports Ray only when used."""
