"""The RQ worker side: job functions, the worker loop, its heartbeats and webhooks.

A worker process is one core's worth of work (its onnxruntime sessions run ``ONNXPLAIN_ORT_THREADS`` intra-op
threads, 1 by default; scale out with more workers). numpy's OpenBLAS would otherwise start a thread per core
for the estimators' products and leave them spinning on the cores the other workers use: with two workers on
two cores an audit ran at 0.95× one worker's speed instead of 1.7×. Set here, before anything of the worker
imports numpy; an explicit ``OPENBLAS_NUM_THREADS`` wins.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ.get("ONNXPLAIN_ORT_THREADS", "1"))
