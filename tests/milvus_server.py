"""Start a real Milvus standalone server (PyPI ``milvus==2.3.5``, "embedded Milvus") for the tests.

Run with the interpreter of the virtual environment that holds ``milvus`` (its pins clash with
the project's, so it lives apart): ``python milvus_server.py DATA_DIR PORT``. Prints READY.
"""

import sys

from milvus import default_server

default_server.set_base_dir(sys.argv[1])
default_server.listen_port = int(sys.argv[2])
default_server.start()
print("READY", default_server.listen_port, flush=True)
default_server.wait()
