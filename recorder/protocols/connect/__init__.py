"""Connect and gRPC traffic in the record: envelopes, schema-less protobuf, masking.

Cursor's agent (and any Connect or gRPC client) sends protobuf messages in 5-byte
envelopes over long HTTP/2 streams. The writer thread turns each direction of such a
stream into decoded messages: `envelopes` splits the stream (an envelope can span chunks,
a chunk can hold several) and undoes per-message compression; `wire` decodes each message
without a schema into a field-number tree; `tree_masking` masks the strings inside, across
messages; `record` stores the masked tree (the record's `messages` body) and rebuilds the
bytes from it. `descriptors` names fields from a FileDescriptorSet the operator supplies.
docs/format.md ("Connect and gRPC bodies") is the spec.
"""
