"""qnode.transport: the wire protocol (docs/internals.md §1).

- `api`: API keys and served version ranges;
- `frame`: header/body/data framing, `decode_request`, `encode_response`, error responses;
- `schema` + `messages`: request body schemas per (API, version), `parse_request`;
- `sockets`: ROUTER/DEALER set-up; `errors`: wire error codes.
"""
