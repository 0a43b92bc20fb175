"""Tools: developer and operator programs that drive a real server (benchmarks, the load
sweep, the demo), each run with `python -m del_server.tools.<name>`. Not part of serving."""
