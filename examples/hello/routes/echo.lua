-- POST /echo : answers with the JSON body it got, or 400 when it is not JSON.
return function(req)
  local body, err = req:json()
  if body == nil then return 400, "request body is not JSON: " .. err end
  return 200, { you_sent = body, request_id = req.id }
end
