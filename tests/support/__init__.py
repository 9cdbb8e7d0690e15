"""What the tests share that is not a fixture: servers started for a test (``redis_server``,
``redis_cluster``, ``nats_server``, ``tcp_proxy``, ``tls_certs``), the product's commands as processes
(``processes``), an in-process replica (``gateway``), and small helpers (``waiting``, ``metrics``,
``logs``, ``keyspace``, ``scale``). Fixtures live in the ``conftest.py`` files."""
