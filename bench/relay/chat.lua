-- wrk script for bench/run-relay.sh: every request is the same small
-- non-streaming chat completion, POSTed as JSON. The Authorization header is
-- given on wrk's command line (-H), exactly as run-anchors.sh does for S3.
wrk.method = "POST"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello there"}]}'
wrk.headers["Content-Type"] = "application/json"
