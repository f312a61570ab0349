"""One module per system under test; each turns settings and sizes into timed cases."""
