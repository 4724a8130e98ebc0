# schemathesis hooks of tests/openapi.rs: an SDP body (application/sdp) is text.
import schemathesis

schemathesis.serializer.alias("application/sdp", "text/plain")
