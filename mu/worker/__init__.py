"""The worker runtime that ships inside every Lambda bundle.

It imports only the standard library, boto3 and the pure core (``mu.errors``,
``mu.protocol``, ``mu.launch``), because the Lambda runtime has nothing else:

* :mod:`mu.worker.session` connects back to the coordinator over mutual TLS, says hello and
  serves commands until told to quit (mode 1), or runs the command once (mode 0);
* :mod:`mu.worker.commands` is the command table (DESIGN §3), the worker's values and the
  command templating;
* :mod:`mu.worker.jobs` runs the ``nonblock`` background jobs and owns their subprocesses;
* :mod:`mu.worker.s3` does the S3 transfers; :mod:`mu.worker.peer` the worker-to-peer link.

The Lambda entry point ``lambda_function.lambda_handler`` calls :func:`mu.worker.session.run`.
"""

from __future__ import annotations
