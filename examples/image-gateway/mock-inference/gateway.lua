-- A stand-in for the seed's FastAPI + Keras inference service, as a moongate
-- app: for tests, and to try the image gateway without TensorFlow.
--
--   MOCK_LISTEN_ADDR=:8000 build/moongate examples/image-gateway/mock-inference/gateway.lua
--
-- POST /predict {"image_data": "<base64>"} -> [{"label", "confidence"} x 3]
--   derived deterministically from the decoded bytes (see predict.lua);
--   bad base64 or bytes that are not an image -> 500 {"detail": ...}, a body
--   without image_data -> 422 {"detail": [...]}, like FastAPI.
-- GET /health -> {"status":"ok"}
--
-- It misbehaves on request: image_data starting with "mock:<mode>" (never
-- valid base64), or the same in an X-Mock-Behavior header:
--   mock:error[:detail]  500 {"detail": "<detail>"}
--   mock:unavailable     503, plain text, no detail
--   mock:status:<N>      N with a JSON body that has no detail
--   mock:stall:<secs>    wait, then answer normally (past the gateway's timeout: 504)
--   mock:garbage         200 with a body that is not JSON
--   mock:object          200 with a JSON object instead of a list
--   mock:cut             200, half a body, then the connection is closed
--   mock:close           the connection is closed before any answer
return {
  listen = os.getenv("MOCK_LISTEN_ADDR") or ":8000",
  workers = "auto",
  shutdown_timeout = "2s",
  limits = { body = "20m" },
  routes = {
    { "POST", "/predict", handler = "predict.lua", name = "predict" },
  },
}
