"""The job store: the :class:`~zitops.agent.storage.store.Store` interface and its factory, SQLite
(``jobs``), PostgreSQL (``store_pg`` on ``pg_base``, with ``pg_connect``, ``pg_listen``, ``pg_schema``; the SQL lives in
``zitops/agent/sql/``), the store's error translation, and the fleet's view of a shared store.

May import: ``zitops.agent.ops`` and ``zitops.agent.contract``. Never ``http``, ``dispatch`` or ``workers``.
Store-side fleet work (fault handling of the shared database) lands here.
"""
