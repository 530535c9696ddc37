from twisted.application.service import ServiceMaker

worknet_rpc = ServiceMaker(
    "WorkNet RPC",
    "worknet.tap",
    "The WorkNet marketplace XML-RPC business-logic server",
    "worknet-rpc",
)
