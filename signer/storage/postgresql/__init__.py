"""The PostgreSQL backend: one database shared by every replica (psycopg 3, a pool).

Each claim that must be atomic across replicas is one transaction with a row lock
(``SELECT ... FOR UPDATE``) or an advisory lock (the audit chain's tip); key changes are
announced with NOTIFY so every replica drops its registry cache at once.
"""
