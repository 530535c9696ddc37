-- Mixed WorkNet RPC calls for wrk (bench/soak.py): reads and writes in rotation, unique ids per write.
-- Answers with success false are counted and printed as "WORKNET_FAILED n" at the end.
local user_id = os.getenv("USER_ID")
local gig_id = os.getenv("GIG_ID")
local slug = os.getenv("SLUG")
local threads = {}
local n = 0
failed = 0

local function call(method, params)
  local body = "<?xml version='1.0'?><methodCall><methodName>" .. method .. "</methodName><params>"
  for _, p in ipairs(params) do
    body = body .. "<param><value>" .. p .. "</value></param>"
  end
  return wrk.format("POST", "/RPC2", {["Content-Type"] = "text/xml"}, body .. "</params></methodCall>")
end

local function s(text) return "<string>" .. text .. "</string>" end
local function i(number) return "<int>" .. number .. "</int>" end

function setup(thread)
  table.insert(threads, thread)
end

function request()
  n = n + 1
  local kind = n % 8
  if kind == 0 then return call("ping", {})
  elseif kind == 1 then return call("paymentsService.calculate_fees", {i(100)})
  elseif kind == 2 then return call("categoriesService.get_by_slug", {s(slug)})
  elseif kind == 3 then return call("gigsService.get_by_id", {s(gig_id)})
  elseif kind == 4 then
    return call("gigsService.search", {s("load"), "<struct></struct>", i(1), i(20)})
  elseif kind == 5 then
    return call("notificationsService.create", {s(""), s(user_id), s("system"),
      "<struct><member><name>message</name><value><string>soak " .. n .. "</string></value></member></struct>"})
  elseif kind == 6 then
    return call("categoriesService.create", {s("Soak " .. n), s("soak-" .. n), s("")})
  else return call("gigsService.get_by_user", {s(user_id), i(1), i(20)})
  end
end

function response(status, headers, body)
  if status ~= 200 or string.find(body, "<name>success</name><value><boolean>0", 1, true)
      or string.find(body, "<fault>", 1, true) then
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("failed") end
  io.write("WORKNET_FAILED " .. total .. "\n")
end
