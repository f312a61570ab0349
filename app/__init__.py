"""The application on top: the ``modelrunner`` command line (``cli``: serve, runtime, add,
predict on files, validate, test, status, tokens, the example model), what it prints
(``cli_output``, ``report_summary``) and where it connects (``server_address``).

The top layer: it uses the process wiring (:mod:`modelrunner.serving`), the Ray runtimes
(:mod:`modelrunner.cluster`, imported only for ``serve --ray``), the client and image files;
nothing below imports it."""
