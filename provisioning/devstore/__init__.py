"""The dev object store: moto's S3 implementation behind our own SigV4, STS and session-policy
checks (``server``: the endpoint `sandbox-host s3 serve` runs; ``policy``: how it maps a request
to IAM permissions and evaluates a session policy).

For development, the tests and the README's main job, where no MinIO is available; production
hosts run MinIO (roles/object_store). It is an opt-in part: moto comes with the ``server`` extra
(``pip install 'sandbox-host[server]'``), installed only where the object_store role's ``dev``
backend runs, and nothing outside this package imports moto. Importing this package loads
nothing: moto is imported when a server is made.
"""
