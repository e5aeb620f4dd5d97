"""The worker runtime that ships inside every Lambda bundle.

It imports only the standard library, boto3/botocore (in :mod:`mu.worker.s3`, which is
all of its AWS) and the pure core, because the Lambda runtime has nothing else. Of the core,
the worker's modules import ``mu.errors``, ``mu.protocol``, ``mu.integrity`` (the SHA-256
of transfers) and, when a rehearsal's ``fault`` command arrives, ``mu.faults``; importing
``mu.worker`` also runs ``mu/__init__.py``, which imports nothing else (``mu.actor`` and
``mu.states`` only when one of their names is asked for, ``mu.cli`` only when
:func:`mu.run_job` is called, neither of which happens in a worker). The bundle carries these
files and ``mu.actor``/``mu.states``/``mu.launch``/``mu.config`` beside them
(:data:`mu.lambdaize.CORE_MODULES`):

* :mod:`mu.worker.session` connects back to the coordinator over mutual TLS, says hello and
  serves commands until told to quit (mode 1), or runs the command once (mode 0);
* :mod:`mu.worker.commands` is the command table (DESIGN §3), the worker's values and the
  command templating;
* :mod:`mu.worker.jobs` runs the ``nonblock`` background jobs and owns their subprocesses;
  :mod:`mu.worker.reaper` finds and ends every process a command started;
* :mod:`mu.worker.s3` does the S3 transfers; :mod:`mu.worker.peer` the worker-to-peer links,
  imported only when a job opens one (``connect``, ``link``...).

The Lambda entry point ``lambda_function.lambda_handler`` calls :func:`mu.worker.session.run`;
``mu/worker/lambda_function.py`` is a link to ``function/lambda_function.py`` (one file), and
the bundle carries its bytes at the zip's root.
"""

from __future__ import annotations
