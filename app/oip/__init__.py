"""The Open Inference Protocol (KServe's V2, Triton's HTTP/REST API).

:mod:`app.oip.tensors` is the protocol itself, independent of a transport: what each model
declares (``image``, ``input``, ``probabilities``), how a request's tensors become the
pipeline's arrays, and how a batch's probabilities become output tensors.
:mod:`app.oip.rest` is its HTTP/REST encoding (JSON, the binary tensor extension,
compressed bodies); a gRPC encoding would be a sibling of it over the same tensors.
"""
