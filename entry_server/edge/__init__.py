"""The control service's gRPC edge: the servicers (proto in, a plane's call, proto out), the
interceptors (authentication is asked by one, errors and metrics), and server reflection."""
