-- Wireshark dissector for the ipsec-offload agent's frames (system spec sections 3, 4 and 9).
--
--   ipsec_offload.meta  the metadata tag: EtherType 0x88B5 || u32 metadata word, the outermost
--                       tag. The word is Tx metadata (host side to agent) or Rx metadata (agent
--                       to host side); the bytes do not say which, so the "direction"
--                       preference chooses: Auto (a heuristic, below), Tx, Rx or Both. After
--                       the word the next EtherType goes to Wireshark's EtherType table, so
--                       VLAN, IPv4, IPv6, ESP (and ESP decryption with an esp_sa file) work as
--                       usual behind the tag.
--   ipsec_offload.cfg   config frames: EtherType 0x88B6, 12-byte header and TLVs (spec 1.1's
--                       LIST_SAS, EVENT and their TLVs included).
--   ipsec_offload.esp   ESP whose payload is in the clear because of the agent: Tx frames with
--                       OFFLOAD=1 (ESP header, IV, plaintext; no trailer or ICV yet) and Rx
--                       frames with IPSEC=1 STATUS=OK (decrypted in place; the ICV removed).
--                       Wireshark's own ESP dissector would try to decrypt them; this one shows
--                       the plaintext and hands it to the next protocol.
--
-- Auto direction, first rule that applies:
--   1. the frame's source MAC is the agent's (preference agent_mac): Rx;
--   2. Tx reserved bits 30-24 set: Rx if the word is a valid Rx word, else Tx (the agent only
--      emits valid Rx words, so an invalid word comes from the host side);
--   3. bit 31 set: Tx if L3_OFFSET equals the L2 header length of the frame (tag removed) and
--      an IPv4/IPv6 header starts there, as the agent checks; otherwise Rx (IPSEC, STATUS OK);
--   4. bit 31 clear, other bits set: Tx (for a non-ESP frame the agent writes an all-zero word);
--   5. all-zero word: a config frame behind it is Rx if the agent sends it (a reply, or an
--      EVENT request), Tx if the PF does (a request, or an EVENT reply); ESP behind it is Tx
--      (the agent marks ESP it passes up with IPSEC=1); otherwise both meanings are shown
--      (Tx bypass, Rx not ESP).
--
-- Install: copy this file to the personal Lua plugins folder (~/.local/lib/wireshark/plugins/)
-- or run `tshark -X lua_script:ipsec_offload.lua`. See docs/wireshark.md.

local META_ETHERTYPE = 0x88B5
local CONFIG_ETHERTYPE = 0x88B6

-- arithmetic bit helpers: portable across the Lua versions Wireshark embeds
local function bits(value, shift, width)
    return math.floor(value / 2 ^ shift) % 2 ^ width
end

-- an EtherType preference: "0x88B5" or "34997"; anything else gives the default
local function ethertype_pref(text, default)
    local value = tonumber(text or "")
    if value == nil or value < 0x0600 or value > 0xFFFF or value % 1 ~= 0 then
        return default
    end
    return value
end

local function hex_mac(text)
    local hex = string.lower(string.gsub(text or "", "[^%x]", ""))
    if #hex ~= 12 then
        return nil
    end
    return hex
end

-- value strings ------------------------------------------------------------------------------

local ETHERTYPES = {
    [0x0800] = "IPv4",
    [0x0806] = "ARP",
    [0x8100] = "802.1Q VLAN",
    [0x86DD] = "IPv6",
    [0x88A8] = "802.1ad VLAN",
    [0x88B5] = "ipsec-offload metadata tag",
    [0x88B6] = "ipsec-offload config",
}

local IP_PROTOCOLS = {
    [0] = "IPv6 Hop-by-Hop",
    [1] = "ICMP",
    [4] = "IPv4",
    [6] = "TCP",
    [17] = "UDP",
    [41] = "IPv6",
    [43] = "IPv6 Routing",
    [44] = "IPv6 Fragment",
    [47] = "GRE",
    [50] = "ESP",
    [51] = "AH",
    [58] = "ICMPv6",
    [59] = "IPv6 No Next Header",
    [60] = "IPv6 Destination Options",
    [132] = "SCTP",
}

local RX_STATUS = {
    [0] = "OK",
    [1] = "NO_SA",
    [2] = "AUTH_FAILED",
    [3] = "REPLAY",
    [4] = "MALFORMED",
    [5] = "SA_EXPIRED",
}

local DIRECTIONS = {
    [1] = "Tx (host side to agent)",
    [2] = "Rx (agent to host side)",
    [3] = "Tx or Rx (both meanings shown)",
}

local OPCODES = {
    [0x01] = "ADD_SA",
    [0x02] = "REMOVE_SA",
    [0x03] = "REMOVE_ALL_SAS",
    [0x04] = "ADD_LOCAL_ADDR",
    [0x05] = "REMOVE_LOCAL_ADDR",
    [0x06] = "GET_SA_STATS",
    [0x07] = "GET_CAPS",
    [0x08] = "LIST_SAS",
    [0x09] = "EVENT",
}
local EVENT_OPCODE = 0x09

local OPCODES_WITH_REPLY = {}
for code, name in pairs(OPCODES) do
    OPCODES_WITH_REPLY[code] = name
    OPCODES_WITH_REPLY[code + 0x80] = name .. " reply"
end

local CONFIG_STATUS = {
    [0] = "OK",
    [1] = "BAD_REQUEST",
    [2] = "UNSUPPORTED",
    [3] = "NO_SPACE",
    [4] = "EXISTS",
    [5] = "NOT_FOUND",
    [6] = "KEY_UNWRAP_FAILED",
    [7] = "BAD_VERSION",
}

local TLV_TYPES = {
    [0x0001] = "SA_INDEX",
    [0x0002] = "DIR",
    [0x0003] = "SPI",
    [0x0004] = "DST_ADDR",
    [0x0005] = "SRC_ADDR",
    [0x0006] = "ALG",
    [0x0007] = "KEY",
    [0x0008] = "WRAPPED_KEY",
    [0x0009] = "LOCAL_MAC",
    [0x000A] = "VLAN",
    [0x000B] = "ESN",
    [0x000C] = "REPLAY_WINDOW",
    [0x000D] = "LIFETIME_PACKETS",
    [0x000E] = "LIFETIME_BYTES",
    [0x000F] = "COUNT",
    [0x0010] = "STATS",
    [0x0011] = "CAPS",
    [0x0012] = "KEK_ID",
    [0x0013] = "SEQ",
    [0x0014] = "SA_ENTRY",
    [0x0015] = "EVENT_TYPE",
    [0x0016] = "BOOT_ID",
    [0x0017] = "SOFT_LIFETIME_PACKETS",
    [0x0018] = "SOFT_LIFETIME_BYTES",
}

local EVENT_TYPES = {
    [1] = "AGENT_STARTED",
    [2] = "SOFT_EXPIRE",
    [3] = "HARD_EXPIRE",
    [4] = "SEQ_SOFT_LIMIT",
}

local SA_DIRECTIONS = { [0] = "inbound (decrypt)", [1] = "outbound (encrypt)" }
local ALGORITHMS = { [1] = "AES-GCM-128", [2] = "AES-GCM-256" }
local VLAN_TPIDS = { [0x8100] = "802.1Q", [0x88A8] = "802.1ad" }

-- protocols ----------------------------------------------------------------------------------

local meta = Proto("ipsec_offload.meta", "ipsec-offload metadata tag")
local cfg = Proto("ipsec_offload.cfg", "ipsec-offload config")
local esp = Proto("ipsec_offload.esp", "ipsec-offload ESP in the clear")

-- metadata tag fields
local mf = {
    direction = ProtoField.uint8("ipsec_offload.meta.direction", "Direction", base.DEC, DIRECTIONS),
    tx = ProtoField.uint32("ipsec_offload.meta.tx", "Tx metadata", base.HEX),
    offload = ProtoField.bool("ipsec_offload.meta.offload", "OFFLOAD", 32, nil, 0x80000000),
    tx_reserved = ProtoField.uint32("ipsec_offload.meta.tx_reserved", "Reserved (Tx)", base.HEX,
        nil, 0x7F000000),
    next_header = ProtoField.uint32("ipsec_offload.meta.next_header", "NEXT_HEADER", base.DEC,
        IP_PROTOCOLS, 0x00FF0000),
    l3_offset = ProtoField.uint32("ipsec_offload.meta.l3_offset", "L3_OFFSET (bytes)", base.DEC,
        nil, 0x0000FF00),
    esp_offset = ProtoField.uint32("ipsec_offload.meta.esp_offset", "ESP_OFFSET (4-byte words)",
        base.DEC, nil, 0x000000FF),
    rx = ProtoField.uint32("ipsec_offload.meta.rx", "Rx metadata", base.HEX),
    ipsec = ProtoField.bool("ipsec_offload.meta.ipsec", "IPSEC", 32, nil, 0x80000000),
    status = ProtoField.uint32("ipsec_offload.meta.status", "STATUS", base.DEC, RX_STATUS,
        0x78000000),
    rx_reserved = ProtoField.uint32("ipsec_offload.meta.rx_reserved", "Reserved (Rx)", base.HEX,
        nil, 0x07000000),
    sa_index = ProtoField.uint32("ipsec_offload.meta.sa_index", "SA_INDEX", base.DEC, nil,
        0x00FFFFFF),
    etype = ProtoField.uint16("ipsec_offload.meta.etype", "Type", base.HEX, ETHERTYPES),
}
meta.fields = {
    mf.direction, mf.tx, mf.offload, mf.tx_reserved, mf.next_header, mf.l3_offset,
    mf.esp_offset, mf.rx, mf.ipsec, mf.status, mf.rx_reserved, mf.sa_index, mf.etype,
}

local mx = {
    truncated = ProtoExpert.new("ipsec_offload.meta.truncated", "Truncated metadata tag",
        expert.group.MALFORMED, expert.severity.ERROR),
    reserved = ProtoExpert.new("ipsec_offload.meta.reserved_set", "Reserved metadata bits set",
        expert.group.PROTOCOL, expert.severity.ERROR),
    bad_status = ProtoExpert.new("ipsec_offload.meta.bad_status", "Reserved Rx STATUS value",
        expert.group.PROTOCOL, expert.severity.ERROR),
    no_sa = ProtoExpert.new("ipsec_offload.meta.no_sa",
        "The agent has no inbound SA for this ESP frame", expert.group.RESPONSE_CODE,
        expert.severity.NOTE),
    rx_error = ProtoExpert.new("ipsec_offload.meta.rx_error", "The agent rejected this ESP frame",
        expert.group.RESPONSE_CODE, expert.severity.WARN),
    bad_offsets = ProtoExpert.new("ipsec_offload.meta.bad_offsets",
        "Tx offsets disagree with the frame", expert.group.PROTOCOL, expert.severity.WARN),
    not_outermost = ProtoExpert.new("ipsec_offload.meta.not_outermost",
        "Metadata EtherType not in the outermost position", expert.group.PROTOCOL,
        expert.severity.WARN),
    malformed_payload = ProtoExpert.new("ipsec_offload.meta.malformed_payload",
        "Malformed packet behind the metadata tag", expert.group.MALFORMED,
        expert.severity.ERROR),
}
meta.experts = {
    mx.truncated, mx.reserved, mx.bad_status, mx.no_sa, mx.rx_error, mx.bad_offsets,
    mx.not_outermost, mx.malformed_payload,
}

local DIRECTION_ENUM = {
    { 1, "Auto", 0 },
    { 2, "Tx", 1 },
    { 3, "Rx", 2 },
    { 4, "Both", 3 },
}
meta.prefs.direction = Pref.enum("Metadata direction", 0,
    "How to read the metadata word: Auto (guess Tx or Rx per frame), Tx (host side to " ..
    "agent), Rx (agent to host side) or Both", DIRECTION_ENUM, false)
meta.prefs.agent_mac = Pref.string("Agent MAC address", "02:00:00:00:00:01",
    "Frames from this source MAC carry Rx metadata (Auto direction)")
meta.prefs.ethertype = Pref.string("Metadata EtherType", "0x88B5",
    "EtherType of the metadata tag, hex (0x...) or decimal")
meta.prefs.esp_plaintext = Pref.bool("Dissect ESP plaintext", true,
    "Show the payload of Tx OFFLOAD and Rx STATUS OK frames, which is in the clear")

-- config fields
local cf = {
    version = ProtoField.uint8("ipsec_offload.cfg.version", "Version", base.DEC),
    opcode = ProtoField.uint8("ipsec_offload.cfg.opcode", "Opcode", base.HEX,
        OPCODES_WITH_REPLY),
    reply = ProtoField.bool("ipsec_offload.cfg.opcode.reply", "Reply", 8, nil, 0x80),
    request = ProtoField.uint8("ipsec_offload.cfg.opcode.request", "Request opcode", base.HEX,
        OPCODES, 0x7F),
    status = ProtoField.uint8("ipsec_offload.cfg.status", "Status", base.DEC, CONFIG_STATUS),
    flags = ProtoField.uint8("ipsec_offload.cfg.flags", "Flags", base.HEX),
    port = ProtoField.uint8("ipsec_offload.cfg.port", "Port", base.DEC),
    reserved = ProtoField.uint8("ipsec_offload.cfg.reserved", "Reserved", base.HEX),
    txn_id = ProtoField.uint32("ipsec_offload.cfg.txn_id", "Transaction ID", base.DEC_HEX),
    tlv_length = ProtoField.uint16("ipsec_offload.cfg.tlv_length", "TLV length", base.DEC),
    body = ProtoField.bytes("ipsec_offload.cfg.body", "Body (unknown version)"),
    padding = ProtoField.bytes("ipsec_offload.cfg.padding", "Padding (after tlv_length)"),
    tlv = ProtoField.none("ipsec_offload.cfg.tlv", "TLV"),
    tlv_type = ProtoField.uint16("ipsec_offload.cfg.tlv.type", "Type", base.HEX, TLV_TYPES),
    tlv_len = ProtoField.uint16("ipsec_offload.cfg.tlv.length", "Length", base.DEC),
    tlv_value = ProtoField.bytes("ipsec_offload.cfg.tlv.value", "Value"),
    sa_index = ProtoField.uint32("ipsec_offload.cfg.tlv.sa_index", "SA index", base.DEC),
    dir = ProtoField.uint8("ipsec_offload.cfg.tlv.dir", "Direction", base.DEC, SA_DIRECTIONS),
    spi = ProtoField.uint32("ipsec_offload.cfg.tlv.spi", "SPI", base.HEX),
    dst_ipv4 = ProtoField.ipv4("ipsec_offload.cfg.tlv.dst_ipv4", "Destination address"),
    dst_ipv6 = ProtoField.ipv6("ipsec_offload.cfg.tlv.dst_ipv6", "Destination address"),
    src_ipv4 = ProtoField.ipv4("ipsec_offload.cfg.tlv.src_ipv4", "Source address"),
    src_ipv6 = ProtoField.ipv6("ipsec_offload.cfg.tlv.src_ipv6", "Source address"),
    alg = ProtoField.uint8("ipsec_offload.cfg.tlv.alg", "Algorithm", base.DEC, ALGORITHMS),
    key = ProtoField.bytes("ipsec_offload.cfg.tlv.key", "Key material (key || salt)"),
    aes_key = ProtoField.bytes("ipsec_offload.cfg.tlv.key.aes_key", "AES key"),
    salt = ProtoField.bytes("ipsec_offload.cfg.tlv.key.salt", "Salt"),
    wrapped_key = ProtoField.bytes("ipsec_offload.cfg.tlv.wrapped_key",
        "Wrapped key material (RFC 5649)"),
    local_mac = ProtoField.ether("ipsec_offload.cfg.tlv.local_mac", "Local MAC"),
    vlan_tpid = ProtoField.uint16("ipsec_offload.cfg.tlv.vlan.tpid", "TPID", base.HEX,
        VLAN_TPIDS),
    vlan_tci = ProtoField.uint16("ipsec_offload.cfg.tlv.vlan.tci", "TCI", base.HEX),
    vlan_pcp = ProtoField.uint16("ipsec_offload.cfg.tlv.vlan.pcp", "Priority", base.DEC, nil,
        0xE000),
    vlan_dei = ProtoField.bool("ipsec_offload.cfg.tlv.vlan.dei", "DEI", 16, nil, 0x1000),
    vlan_vid = ProtoField.uint16("ipsec_offload.cfg.tlv.vlan.vid", "VID", base.DEC, nil, 0x0FFF),
    esn = ProtoField.bool("ipsec_offload.cfg.tlv.esn", "Extended sequence numbers"),
    replay_window = ProtoField.uint32("ipsec_offload.cfg.tlv.replay_window", "Replay window",
        base.DEC),
    lifetime_packets = ProtoField.uint64("ipsec_offload.cfg.tlv.lifetime_packets",
        "Lifetime (packets)", base.DEC),
    lifetime_bytes = ProtoField.uint64("ipsec_offload.cfg.tlv.lifetime_bytes",
        "Lifetime (bytes)", base.DEC),
    count = ProtoField.uint32("ipsec_offload.cfg.tlv.count", "Count", base.DEC),
    stats_packets = ProtoField.uint64("ipsec_offload.cfg.tlv.stats.packets", "Packets", base.DEC),
    stats_bytes = ProtoField.uint64("ipsec_offload.cfg.tlv.stats.bytes", "Bytes", base.DEC),
    stats_no_sa = ProtoField.uint64("ipsec_offload.cfg.tlv.stats.no_sa", "NO_SA errors",
        base.DEC),
    stats_auth_failed = ProtoField.uint64("ipsec_offload.cfg.tlv.stats.auth_failed",
        "AUTH_FAILED errors", base.DEC),
    stats_replay = ProtoField.uint64("ipsec_offload.cfg.tlv.stats.replay", "REPLAY errors",
        base.DEC),
    stats_malformed = ProtoField.uint64("ipsec_offload.cfg.tlv.stats.malformed",
        "MALFORMED errors", base.DEC),
    stats_sa_expired = ProtoField.uint64("ipsec_offload.cfg.tlv.stats.sa_expired",
        "SA_EXPIRED errors", base.DEC),
    caps_count = ProtoField.uint8("ipsec_offload.cfg.tlv.caps.alg_count", "Algorithm count",
        base.DEC),
    caps_alg = ProtoField.uint8("ipsec_offload.cfg.tlv.caps.alg", "Algorithm", base.DEC,
        ALGORITHMS),
    caps_sad_size = ProtoField.uint32("ipsec_offload.cfg.tlv.caps.sad_size", "SAD size",
        base.DEC),
    caps_max_window = ProtoField.uint32("ipsec_offload.cfg.tlv.caps.max_replay_window",
        "Max replay window", base.DEC),
    kek_id = ProtoField.uint32("ipsec_offload.cfg.tlv.kek_id", "KEK ID", base.DEC),
    seq = ProtoField.uint64("ipsec_offload.cfg.tlv.seq", "Sequence number", base.DEC),
    entry_sa_index = ProtoField.uint32("ipsec_offload.cfg.tlv.sa_entry.sa_index", "SA index",
        base.DEC),
    entry_dir = ProtoField.uint8("ipsec_offload.cfg.tlv.sa_entry.dir", "Direction", base.DEC,
        SA_DIRECTIONS),
    entry_spi = ProtoField.uint32("ipsec_offload.cfg.tlv.sa_entry.spi", "SPI", base.HEX),
    entry_addr_len = ProtoField.uint8("ipsec_offload.cfg.tlv.sa_entry.addr_len",
        "Address length", base.DEC),
    entry_dst_ipv4 = ProtoField.ipv4("ipsec_offload.cfg.tlv.sa_entry.dst_ipv4",
        "Destination address"),
    entry_dst_ipv6 = ProtoField.ipv6("ipsec_offload.cfg.tlv.sa_entry.dst_ipv6",
        "Destination address"),
    entry_seq = ProtoField.uint64("ipsec_offload.cfg.tlv.sa_entry.seq", "Sequence number",
        base.DEC),
    event_type = ProtoField.uint8("ipsec_offload.cfg.tlv.event_type", "Event type", base.DEC,
        EVENT_TYPES),
    boot_id = ProtoField.uint64("ipsec_offload.cfg.tlv.boot_id", "Boot ID", base.HEX),
    soft_lifetime_packets = ProtoField.uint64("ipsec_offload.cfg.tlv.soft_lifetime_packets",
        "Soft lifetime (packets)", base.DEC),
    soft_lifetime_bytes = ProtoField.uint64("ipsec_offload.cfg.tlv.soft_lifetime_bytes",
        "Soft lifetime (bytes)", base.DEC),
}
cfg.fields = {
    cf.version, cf.opcode, cf.reply, cf.request, cf.status, cf.flags, cf.port, cf.reserved,
    cf.txn_id, cf.tlv_length, cf.body, cf.padding, cf.tlv, cf.tlv_type, cf.tlv_len, cf.tlv_value,
    cf.sa_index, cf.dir, cf.spi, cf.dst_ipv4, cf.dst_ipv6, cf.src_ipv4, cf.src_ipv6, cf.alg,
    cf.key, cf.aes_key, cf.salt, cf.wrapped_key, cf.local_mac, cf.vlan_tpid, cf.vlan_tci,
    cf.vlan_pcp, cf.vlan_dei, cf.vlan_vid, cf.esn, cf.replay_window, cf.lifetime_packets,
    cf.lifetime_bytes, cf.count, cf.stats_packets, cf.stats_bytes, cf.stats_no_sa,
    cf.stats_auth_failed, cf.stats_replay, cf.stats_malformed, cf.stats_sa_expired, cf.caps_count,
    cf.caps_alg, cf.caps_sad_size, cf.caps_max_window, cf.kek_id, cf.seq, cf.entry_sa_index,
    cf.entry_dir, cf.entry_spi, cf.entry_addr_len, cf.entry_dst_ipv4, cf.entry_dst_ipv6,
    cf.entry_seq, cf.event_type, cf.boot_id, cf.soft_lifetime_packets, cf.soft_lifetime_bytes,
}

local cx = {
    truncated = ProtoExpert.new("ipsec_offload.cfg.truncated",
        "Config header shorter than 12 bytes", expert.group.MALFORMED, expert.severity.ERROR),
    bad_tlv_length = ProtoExpert.new("ipsec_offload.cfg.bad_tlv_length",
        "tlv_length exceeds the frame", expert.group.MALFORMED, expert.severity.ERROR),
    reserved = ProtoExpert.new("ipsec_offload.cfg.reserved_set", "Reserved header byte is not 0",
        expert.group.PROTOCOL, expert.severity.ERROR),
    bad_version = ProtoExpert.new("ipsec_offload.cfg.bad_version",
        "Unknown config version: only the header is defined", expert.group.PROTOCOL,
        expert.severity.WARN),
    status_error = ProtoExpert.new("ipsec_offload.cfg.status_error",
        "The agent refused the request", expert.group.RESPONSE_CODE, expert.severity.WARN),
    tlv_truncated = ProtoExpert.new("ipsec_offload.cfg.tlv.truncated", "Truncated TLV",
        expert.group.MALFORMED, expert.severity.ERROR),
    tlv_bad_length = ProtoExpert.new("ipsec_offload.cfg.tlv.bad_length",
        "TLV value of the wrong length", expert.group.MALFORMED, expert.severity.ERROR),
    tlv_unknown = ProtoExpert.new("ipsec_offload.cfg.tlv.unknown", "Unknown TLV type",
        expert.group.UNDECODED, expert.severity.WARN),
    tlv_bad_value = ProtoExpert.new("ipsec_offload.cfg.tlv.bad_value", "TLV value not allowed",
        expert.group.PROTOCOL, expert.severity.WARN),
}
cfg.experts = {
    cx.truncated, cx.bad_tlv_length, cx.reserved, cx.bad_version, cx.status_error,
    cx.tlv_truncated, cx.tlv_bad_length, cx.tlv_unknown, cx.tlv_bad_value,
}

cfg.prefs.ethertype = Pref.string("Config EtherType", "0x88B6",
    "EtherType of config frames, hex (0x...) or decimal")

-- ESP-in-the-clear fields
local ef = {
    state = ProtoField.uint8("ipsec_offload.esp.state", "State", base.DEC, {
        [1] = "Tx: to be encrypted by the agent (no trailer, no ICV)",
        [2] = "Rx: decrypted by the agent (ICV removed)",
    }),
    spi = ProtoField.uint32("ipsec_offload.esp.spi", "SPI", base.HEX),
    sequence = ProtoField.uint32("ipsec_offload.esp.sequence", "Sequence number", base.DEC),
    iv = ProtoField.bytes("ipsec_offload.esp.iv", "IV"),
    payload = ProtoField.bytes("ipsec_offload.esp.payload", "Payload"),
    pad = ProtoField.bytes("ipsec_offload.esp.pad", "Padding"),
    pad_len = ProtoField.uint8("ipsec_offload.esp.pad_len", "Pad length", base.DEC),
    next_header = ProtoField.uint8("ipsec_offload.esp.next_header", "Next header", base.DEC,
        IP_PROTOCOLS),
}
esp.fields = {
    ef.state, ef.spi, ef.sequence, ef.iv, ef.payload, ef.pad, ef.pad_len, ef.next_header,
}
local ex = {
    truncated = ProtoExpert.new("ipsec_offload.esp.truncated", "ESP shorter than its layout",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_padding = ProtoExpert.new("ipsec_offload.esp.bad_padding", "ESP padding is not 1, 2, 3...",
        expert.group.MALFORMED, expert.severity.WARN),
    malformed_payload = ProtoExpert.new("ipsec_offload.esp.malformed_payload",
        "Malformed packet in the ESP payload", expert.group.MALFORMED, expert.severity.ERROR),
}
esp.experts = { ex.truncated, ex.bad_padding, ex.malformed_payload }

-- shared state -------------------------------------------------------------------------------

local ethertype_table = DissectorTable.get("ethertype")
local ip_proto_table = DissectorTable.get("ip.proto")
local eth_src_field = Field.new("eth.src")
local eth_type_field = Field.new("eth.type")
local data_dissector = Dissector.get("data")

-- While a Tx OFFLOAD or Rx OK frame is dissected, IP protocol 50 goes to `esp` (see
-- with_clear_esp); `clear_esp` holds what that ESP dissector needs to know, `saved_esp` the
-- dissector IP protocol 50 had before (Wireshark's ESP, or what Decode As chose).
local clear_esp = nil
local saved_esp = nil
local swap_depth = 0

local registered = { meta = nil, cfg = nil }

-- The protocol item over the whole of `tvb` (an empty tvb has no range to point at).
local function add_proto(tree, proto, tvb, length)
    if tvb:len() == 0 then
        return tree:add(proto)
    end
    return tree:add(proto, tvb(0, math.min(tvb:len(), length or tvb:len())))
end

-- Calls the dissector `table` has for `key`; returns the bytes it took (0: none). A dissector
-- that finds the packet malformed throws; Lua sees that as an error, which here becomes
-- expert info on `item` instead of a Lua error.
local function call_next(table, key, tvb, pinfo, tree, item, malformed)
    local ok, result = pcall(function()
        return table:try(key, tvb, pinfo, tree)
    end)
    if ok then
        return result or 0
    end
    item:add_proto_expert_info(malformed)
    return tvb:len()
end

-- metadata tag -------------------------------------------------------------------------------

-- Offset, in the tvb after the metadata word, of the L3 header and its EtherType.
local function l2_after_tag(tvb)
    local offset = 4
    local vlans = 0
    while tvb:len() >= offset + 2 do
        local etype = tvb(offset, 2):uint()
        if (etype == 0x8100 or etype == 0x88A8) and vlans < 2 and tvb:len() >= offset + 6 then
            offset = offset + 4
            vlans = vlans + 1
        else
            return offset + 2, etype, vlans
        end
    end
    return nil, nil, vlans
end

local function word_fields(word)
    return {
        bit31 = bits(word, 31, 1),
        tx_reserved = bits(word, 24, 7),
        next_header = bits(word, 16, 8),
        l3_offset = bits(word, 8, 8),
        esp_offset = bits(word, 0, 8),
        status = bits(word, 27, 4),
        rx_reserved = bits(word, 24, 3),
        sa_index = bits(word, 0, 24),
    }
end

local function tx_offsets_match(tvb, w)
    local l3, etype = l2_after_tag(tvb)
    if l3 == nil then
        return false
    end
    -- L3_OFFSET counts from the start of the frame with the tag removed: 12 bytes of MACs,
    -- then what follows the word in this tvb
    if w.l3_offset ~= l3 + 12 - 4 then
        return false
    end
    if tvb:len() <= l3 then
        return false
    end
    local version = bits(tvb(l3, 1):uint(), 4, 4)
    return (etype == 0x0800 and version == 4) or (etype == 0x86DD and version == 6)
end

local function ip_protocol(tvb)
    local l3, etype = l2_after_tag(tvb)
    if l3 == nil then
        return nil
    end
    if etype == 0x0800 and tvb:len() >= l3 + 20 then
        return tvb(l3 + 9, 1):uint()
    elseif etype == 0x86DD and tvb:len() >= l3 + 40 then
        return tvb(l3 + 6, 1):uint()
    end
    return nil
end

-- 1 Tx, 2 Rx, 3 both; and why
local function guess_direction(tvb, word, w)
    local src = eth_src_field()
    local agent = hex_mac(meta.prefs.agent_mac)
    if src ~= nil and agent ~= nil and src.range:bytes():tohex():lower() == agent then
        return 2, "the source MAC is the agent's"
    end
    local rx_valid = w.status <= 5 and w.rx_reserved == 0
    if w.tx_reserved ~= 0 then
        if rx_valid then
            return 2, "Tx reserved bits set, a valid Rx word"
        end
        return 1, "invalid as Tx and as Rx: the agent only emits valid Rx words"
    end
    if w.bit31 == 1 then
        if tx_offsets_match(tvb, w) then
            return 1, "OFFLOAD with L3_OFFSET matching the frame"
        end
        return 2, "IPSEC: as Tx, L3_OFFSET would not match the frame"
    end
    if word ~= 0 then
        return 1, "offsets set: the agent writes 0 for frames that are not ESP"
    end
    local l3, etype = l2_after_tag(tvb)
    if l3 ~= nil and etype == registered.cfg and tvb:len() > l3 + 1 then
        local opcode = tvb(l3 + 1, 1):uint()
        if opcode == EVENT_OPCODE then
            return 2, "an EVENT follows, which the agent sends"
        elseif opcode == EVENT_OPCODE + 0x80 then
            return 1, "an EVENT reply follows, which the PF sends"
        elseif bits(opcode, 7, 1) == 1 then
            return 2, "a config reply follows"
        end
        return 1, "a config request follows"
    end
    if ip_protocol(tvb) == 50 then
        return 1, "ESP follows and the agent marks ESP with IPSEC=1"
    end
    return 3, "all-zero word: Tx bypass, or Rx not ESP"
end

local function add_tx(tree, tvb, pinfo, w, checked)
    local sub = tree:add(mf.tx, tvb(0, 4))
    sub:add(mf.offload, tvb(0, 4))
    local reserved = sub:add(mf.tx_reserved, tvb(0, 4))
    if w.tx_reserved ~= 0 then
        reserved:add_proto_expert_info(mx.reserved,
            "Tx reserved bits 30-24 set: the agent drops the frame")
    end
    sub:add(mf.next_header, tvb(0, 4))
    sub:add(mf.l3_offset, tvb(0, 4))
    local esp_item = sub:add(mf.esp_offset, tvb(0, 4))
    esp_item:append_text(string.format(" (%d bytes from the IP header)", w.esp_offset * 4))
    if w.bit31 == 1 then
        sub:append_text(string.format(" (OFFLOAD, next header %d, L3 at %d, ESP at +%d)",
            w.next_header, w.l3_offset, w.esp_offset * 4))
        if checked and not tx_offsets_match(tvb, w) then
            sub:add_proto_expert_info(mx.bad_offsets,
                "L3_OFFSET does not point at the IP header of this frame: the agent drops it")
        end
    else
        sub:append_text(" (bypass)")
    end
    return sub
end

-- SA_INDEX is valid for OK, AUTH_FAILED, REPLAY and SA_EXPIRED
local SA_INDEX_VALID = { [0] = true, [2] = true, [3] = true, [5] = true }

local function rx_summary(w)
    local status = RX_STATUS[w.status] or string.format("reserved status %d", w.status)
    if SA_INDEX_VALID[w.status] then
        return string.format("Rx %s SA %d", status, w.sa_index)
    end
    return "Rx " .. status
end

local function add_rx(tree, tvb, pinfo, w)
    local sub = tree:add(mf.rx, tvb(0, 4))
    sub:add(mf.ipsec, tvb(0, 4))
    local status = sub:add(mf.status, tvb(0, 4))
    local reserved = sub:add(mf.rx_reserved, tvb(0, 4))
    sub:add(mf.sa_index, tvb(0, 4))
    if w.status > 5 then
        status:add_proto_expert_info(mx.bad_status,
            string.format("Reserved Rx STATUS %d", w.status))
    elseif w.bit31 == 1 and w.status == 1 then
        status:add_proto_expert_info(mx.no_sa, "NO_SA: the frame is passed unchanged")
    elseif w.bit31 == 1 and w.status ~= 0 then
        status:add_proto_expert_info(mx.rx_error,
            string.format("%s: the driver drops this frame", RX_STATUS[w.status]))
    end
    if w.rx_reserved ~= 0 then
        reserved:add_proto_expert_info(mx.reserved, "Rx reserved bits 26-24 set")
    end
    if w.bit31 == 1 then
        sub:append_text(" (ESP, " .. string.sub(rx_summary(w), 4) .. ")")
    else
        sub:append_text(" (not ESP)")
    end
    return sub
end

-- Runs `fn` with IP protocol 50 sent to the clear-ESP dissector, when `state` is not nil;
-- the table is always restored, also when tags nest (a tag behind a tag).
local function with_clear_esp(state, fn)
    if state == nil or not meta.prefs.esp_plaintext then
        return fn()
    end
    if swap_depth == 0 then
        saved_esp = ip_proto_table:get_dissector(50)
    end
    if saved_esp == nil then
        return fn()
    end
    swap_depth = swap_depth + 1
    clear_esp = state
    ip_proto_table:add(50, esp)
    local ok, result = pcall(fn)
    swap_depth = swap_depth - 1
    clear_esp = nil
    ip_proto_table:add(50, saved_esp)
    if swap_depth == 0 then
        saved_esp = nil
    end
    if not ok then
        error(result, 0)
    end
    return result
end

function meta.dissector(tvb, pinfo, tree)
    local length = tvb:len()
    local item = add_proto(tree, meta, tvb, 6)
    if length < 4 then
        item:add_proto_expert_info(mx.truncated,
            string.format("Metadata tag of %d bytes, 4 needed", length))
        return length
    end
    local word = tvb(0, 4):uint()
    local w = word_fields(word)
    local pref = meta.prefs.direction
    local direction, reason
    if pref == 1 then
        direction, reason = 1, "preference"
    elseif pref == 2 then
        direction, reason = 2, "preference"
    elseif pref == 3 then
        direction, reason = 3, "preference"
    else
        direction, reason = guess_direction(tvb, word, w)
    end
    -- the tag is only a tag as the outermost one: right after the Ethernet header's MACs,
    -- where the Ethernet dissector put the EtherType that led here
    local types = { eth_type_field() }
    local last = types[#types]
    if last == nil or last.offset + 2 ~= tvb:offset() then
        item:add_proto_expert_info(mx.not_outermost,
            "Metadata EtherType after another tag: to the agent this is payload, not a tag")
    end
    local dir_item = item:add(mf.direction, direction)
    dir_item:set_generated()
    dir_item:append_text(" [" .. reason .. "]")
    local tx_summary = w.bit31 == 1 and string.format("Tx OFFLOAD nh=%d", w.next_header)
        or "Tx bypass"
    local rx_text = w.bit31 == 1 and rx_summary(w) or "Rx not ESP"
    local summary
    if direction == 1 then
        add_tx(item, tvb, pinfo, w, true)
        summary = tx_summary
    elseif direction == 2 then
        add_rx(item, tvb, pinfo, w)
        summary = rx_text
    else
        add_tx(item, tvb, pinfo, w, false)
        add_rx(item, tvb, pinfo, w)
        summary = tx_summary .. " / " .. rx_text
    end
    item:append_text(", " .. summary)
    if length < 6 then
        item:add_proto_expert_info(mx.truncated, "No EtherType after the metadata word")
        return length
    end
    local etype = tvb(4, 2):uint()
    item:add(mf.etype, tvb(4, 2))
    if length == 6 then
        pinfo.cols.info:append(" [" .. summary .. "]")
        return 6
    end
    local state = nil
    if direction == 1 and w.bit31 == 1 and w.tx_reserved == 0 then
        state = { kind = 1, next_header = w.next_header }
    elseif direction == 2 and w.bit31 == 1 and w.status == 0 and w.rx_reserved == 0 then
        state = { kind = 2 }
    end
    local rest = tvb(6):tvb()
    local consumed = with_clear_esp(state, function()
        return call_next(ethertype_table, etype, rest, pinfo, tree, item, mx.malformed_payload)
    end)
    if consumed == 0 then
        data_dissector:call(rest, pinfo, tree)
        consumed = rest:len()
    end
    pinfo.cols.info:append(" [" .. summary .. "]")
    return 6 + consumed
end

-- ESP in the clear ---------------------------------------------------------------------------

local function hand_to_ip_proto(next_header, tvb, pinfo, tree, item)
    if tvb:len() == 0 then
        return
    end
    local taken = call_next(ip_proto_table, next_header, tvb, pinfo, tree, item,
        ex.malformed_payload)
    if taken == 0 then
        data_dissector:call(tvb, pinfo, tree)
    end
end

function esp.dissector(tvb, pinfo, tree)
    local state = clear_esp
    -- one ESP header per frame is in the clear; anything nested is Wireshark's again
    clear_esp = nil
    if saved_esp ~= nil then
        ip_proto_table:add(50, saved_esp)
    end
    if state == nil then
        if saved_esp ~= nil then
            return saved_esp:call(tvb, pinfo, tree)
        end
        return 0
    end
    local length = tvb:len()
    pinfo.cols.protocol:set("ESP")
    local item = add_proto(tree, esp, tvb)
    item:add(ef.state, state.kind):set_generated()
    if length < 16 then
        item:add_proto_expert_info(ex.truncated,
            string.format("%d bytes: ESP header and IV need 16", length))
        return length
    end
    item:add(ef.spi, tvb(0, 4))
    item:add(ef.sequence, tvb(4, 4))
    item:add(ef.iv, tvb(8, 8))
    item:append_text(string.format(", SPI 0x%08x, seq %d", tvb(0, 4):uint(), tvb(4, 4):uint()))
    pinfo.cols.info:set(string.format("ESP (SPI=0x%08x) in the clear", tvb(0, 4):uint()))
    if state.kind == 1 then
        item:append_text(", to be encrypted by the agent")
        local nh = item:add(ef.next_header, state.next_header)
        nh:set_generated()
        nh:append_text(" [from the Tx metadata]")
        if length > 16 then
            item:add(ef.payload, tvb(16))
            hand_to_ip_proto(state.next_header, tvb(16):tvb(), pinfo, tree, item)
        end
        return length
    end
    item:append_text(", decrypted by the agent")
    if length < 18 then
        item:add_proto_expert_info(ex.truncated, "No room for pad length and next header")
        return length
    end
    local pad_len = tvb(length - 2, 1):uint()
    local next_header = tvb(length - 1, 1):uint()
    local payload_len = length - 18 - pad_len
    if payload_len < 0 then
        item:add(ef.pad_len, tvb(length - 2, 1))
        item:add(ef.next_header, tvb(length - 1, 1))
        item:add_proto_expert_info(ex.truncated,
            string.format("Pad length %d exceeds the %d bytes of data", pad_len, length - 18))
        return length
    end
    if payload_len > 0 then
        item:add(ef.payload, tvb(16, payload_len))
    end
    if pad_len > 0 then
        local pad_item = item:add(ef.pad, tvb(16 + payload_len, pad_len))
        for i = 1, pad_len do
            if tvb(16 + payload_len + i - 1, 1):uint() ~= i % 256 then
                pad_item:add_proto_expert_info(ex.bad_padding)
                break
            end
        end
    end
    item:add(ef.pad_len, tvb(length - 2, 1))
    item:add(ef.next_header, tvb(length - 1, 1))
    if payload_len > 0 then
        hand_to_ip_proto(next_header, tvb(16, payload_len):tvb(), pinfo, tree, item)
    end
    return length
end

-- config frames ------------------------------------------------------------------------------

local function u(tvb, offset, size)
    return tvb(offset, size):uint()
end

-- expected value lengths; a function for the ones that depend on the value
local TLV_LENGTHS = {
    [0x0001] = { 4 }, [0x0002] = { 1 }, [0x0003] = { 4 }, [0x0004] = { 4, 16 },
    [0x0005] = { 4, 16 }, [0x0006] = { 1 }, [0x0007] = { 20, 36 }, [0x0008] = { 32, 48 },
    [0x0009] = { 6 }, [0x000A] = { 4 }, [0x000B] = { 0 }, [0x000C] = { 4 }, [0x000D] = { 8 },
    [0x000E] = { 8 }, [0x000F] = { 4 }, [0x0010] = { 56 }, [0x0012] = { 4 }, [0x0013] = { 8 },
    [0x0014] = { 22, 34 }, [0x0015] = { 1 }, [0x0016] = { 8 }, [0x0017] = { 8 },
    [0x0018] = { 8 },
}

local function length_ok(tlv_type, length, value)
    if tlv_type == 0x0011 then
        return length >= 9 and length == 9 + value(0, 1):uint()
    end
    for _, allowed in ipairs(TLV_LENGTHS[tlv_type]) do
        if length == allowed then
            return true
        end
    end
    return false
end

local function expected_lengths(tlv_type, length, value)
    if tlv_type == 0x0011 then
        if length == 0 then
            return "at least 9"
        end
        return tostring(9 + value(0, 1):uint())
    end
    local parts = {}
    for _, allowed in ipairs(TLV_LENGTHS[tlv_type]) do
        parts[#parts + 1] = tostring(allowed)
    end
    return table.concat(parts, " or ")
end

local STATS_FIELDS = {
    cf.stats_packets, cf.stats_bytes, cf.stats_no_sa, cf.stats_auth_failed, cf.stats_replay,
    cf.stats_malformed, cf.stats_sa_expired,
}

-- Adds the decoded value of a TLV whose length is right; returns a short summary.
local function add_tlv_value(t, tlv_type, v, length)
    if tlv_type == 0x0001 then
        t:add(cf.sa_index, v(0, 4))
        return tostring(v(0, 4):uint())
    elseif tlv_type == 0x0002 then
        local item = t:add(cf.dir, v(0, 1))
        local value = v(0, 1):uint()
        if value > 1 then
            item:add_proto_expert_info(cx.tlv_bad_value, "DIR must be 0 or 1")
        end
        return SA_DIRECTIONS[value] or tostring(value)
    elseif tlv_type == 0x0003 then
        local item = t:add(cf.spi, v(0, 4))
        if v(0, 4):uint() == 0 then
            item:add_proto_expert_info(cx.tlv_bad_value, "SPI 0 is reserved")
        end
        return string.format("0x%08x", v(0, 4):uint())
    elseif tlv_type == 0x0004 or tlv_type == 0x0005 then
        local field
        if tlv_type == 0x0004 then
            field = length == 4 and cf.dst_ipv4 or cf.dst_ipv6
        else
            field = length == 4 and cf.src_ipv4 or cf.src_ipv6
        end
        t:add(field, v(0, length))
        if length == 4 then
            return tostring(v(0, 4):ipv4())
        end
        return tostring(v(0, 16):ipv6())
    elseif tlv_type == 0x0006 then
        local item = t:add(cf.alg, v(0, 1))
        local value = v(0, 1):uint()
        if ALGORITHMS[value] == nil then
            item:add_proto_expert_info(cx.tlv_bad_value, "Unknown algorithm")
        end
        return ALGORITHMS[value] or tostring(value)
    elseif tlv_type == 0x0007 then
        local key = t:add(cf.key, v(0, length))
        key:add(cf.aes_key, v(0, length - 4))
        key:add(cf.salt, v(length - 4, 4))
        return string.format("%d-byte key, salt", length - 4)
    elseif tlv_type == 0x0008 then
        t:add(cf.wrapped_key, v(0, length))
        return string.format("%d bytes", length)
    elseif tlv_type == 0x0009 then
        t:add(cf.local_mac, v(0, 6))
        return tostring(v(0, 6):ether())
    elseif tlv_type == 0x000A then
        local tpid = t:add(cf.vlan_tpid, v(0, 2))
        if VLAN_TPIDS[v(0, 2):uint()] == nil then
            tpid:add_proto_expert_info(cx.tlv_bad_value, "TPID must be 0x8100 or 0x88a8")
        end
        local tci = t:add(cf.vlan_tci, v(2, 2))
        tci:add(cf.vlan_pcp, v(2, 2))
        tci:add(cf.vlan_dei, v(2, 2))
        tci:add(cf.vlan_vid, v(2, 2))
        return string.format("%s VID %d", VLAN_TPIDS[v(0, 2):uint()] or
            string.format("TPID 0x%04x", v(0, 2):uint()), bits(v(2, 2):uint(), 0, 12))
    elseif tlv_type == 0x000B then
        return "on"
    elseif tlv_type == 0x000C then
        t:add(cf.replay_window, v(0, 4))
        return tostring(v(0, 4):uint())
    elseif tlv_type == 0x000D then
        t:add(cf.lifetime_packets, v(0, 8))
        return tostring(v(0, 8):uint64())
    elseif tlv_type == 0x000E then
        t:add(cf.lifetime_bytes, v(0, 8))
        return tostring(v(0, 8):uint64())
    elseif tlv_type == 0x000F then
        t:add(cf.count, v(0, 4))
        return tostring(v(0, 4):uint())
    elseif tlv_type == 0x0010 then
        for i, field in ipairs(STATS_FIELDS) do
            t:add(field, v((i - 1) * 8, 8))
        end
        return string.format("%s packets, %s bytes", tostring(v(0, 8):uint64()),
            tostring(v(8, 8):uint64()))
    elseif tlv_type == 0x0011 then
        local count = v(0, 1):uint()
        t:add(cf.caps_count, v(0, 1))
        local names = {}
        for i = 1, count do
            t:add(cf.caps_alg, v(i, 1))
            names[#names + 1] = ALGORITHMS[v(i, 1):uint()] or tostring(v(i, 1):uint())
        end
        t:add(cf.caps_sad_size, v(1 + count, 4))
        t:add(cf.caps_max_window, v(5 + count, 4))
        return string.format("%s; SAD %d, window %d", table.concat(names, ", "),
            v(1 + count, 4):uint(), v(5 + count, 4):uint())
    elseif tlv_type == 0x0012 then
        t:add(cf.kek_id, v(0, 4))
        return tostring(v(0, 4):uint())
    elseif tlv_type == 0x0013 then
        t:add(cf.seq, v(0, 8))
        return tostring(v(0, 8):uint64())
    elseif tlv_type == 0x0014 then
        -- u32 SA index, u8 DIR, u32 SPI, u8 address length, address, u64 SEQ: the value's
        -- length (22 or 34) places the address and SEQ; the length byte must agree
        local addr_len = length - 18
        t:add(cf.entry_sa_index, v(0, 4))
        local dir = t:add(cf.entry_dir, v(4, 1))
        if v(4, 1):uint() > 1 then
            dir:add_proto_expert_info(cx.tlv_bad_value, "DIR must be 0 or 1")
        end
        local spi = t:add(cf.entry_spi, v(5, 4))
        if v(5, 4):uint() == 0 then
            spi:add_proto_expert_info(cx.tlv_bad_value, "SPI 0 is reserved")
        end
        local len_item = t:add(cf.entry_addr_len, v(9, 1))
        if v(9, 1):uint() ~= addr_len then
            len_item:add_proto_expert_info(cx.tlv_bad_value,
                string.format("Address length %d does not match the %d-byte value",
                    v(9, 1):uint(), length))
        end
        local addr
        if addr_len == 4 then
            t:add(cf.entry_dst_ipv4, v(10, 4))
            addr = tostring(v(10, 4):ipv4())
        else
            t:add(cf.entry_dst_ipv6, v(10, 16))
            addr = tostring(v(10, 16):ipv6())
        end
        t:add(cf.entry_seq, v(10 + addr_len, 8))
        return string.format("SA %d, %s, SPI 0x%08x, %s, seq %s", v(0, 4):uint(),
            SA_DIRECTIONS[v(4, 1):uint()] or tostring(v(4, 1):uint()), v(5, 4):uint(), addr,
            tostring(v(10 + addr_len, 8):uint64()))
    elseif tlv_type == 0x0015 then
        local item = t:add(cf.event_type, v(0, 1))
        local value = v(0, 1):uint()
        if EVENT_TYPES[value] == nil then
            item:add_proto_expert_info(cx.tlv_bad_value, "Unknown event type")
        end
        return EVENT_TYPES[value] or tostring(value)
    elseif tlv_type == 0x0016 then
        t:add(cf.boot_id, v(0, 8))
        return "0x" .. v(0, 8):bytes():tohex():lower()
    elseif tlv_type == 0x0017 then
        t:add(cf.soft_lifetime_packets, v(0, 8))
        return tostring(v(0, 8):uint64())
    elseif tlv_type == 0x0018 then
        t:add(cf.soft_lifetime_bytes, v(0, 8))
        return tostring(v(0, 8):uint64())
    end
    return ""
end

-- Dissects the TLVs from offset to stop; the summaries of the well-formed ones go to
-- found[type] (a list, in frame order).
local function dissect_tlvs(tvb, tree, offset, stop, found)
    local count = 0
    while offset < stop do
        count = count + 1
        if offset + 4 > stop then
            local t = tree:add(cf.tlv, tvb(offset, stop - offset))
            t:set_text("TLV (truncated header)")
            t:add_proto_expert_info(cx.tlv_truncated,
                string.format("%d bytes left: a TLV header needs 4", stop - offset))
            return count
        end
        local tlv_type = u(tvb, offset, 2)
        local length = u(tvb, offset + 2, 2)
        local name = TLV_TYPES[tlv_type] or string.format("Unknown (0x%04x)", tlv_type)
        local available = math.min(length, stop - offset - 4)
        local t = tree:add(cf.tlv, tvb(offset, 4 + available))
        t:add(cf.tlv_type, tvb(offset, 2))
        local len_item = t:add(cf.tlv_len, tvb(offset + 2, 2))
        local label = "TLV " .. name
        if available < length then
            if available > 0 then
                t:add(cf.tlv_value, tvb(offset + 4, available))
            end
            t:add_proto_expert_info(cx.tlv_truncated,
                string.format("%s value of %d bytes, only %d left", name, length, available))
            t:set_text(label .. " (truncated)")
            return count
        end
        local v = length > 0 and tvb(offset + 4, length) or nil
        local value_tvb = length > 0 and v:tvb() or nil
        if TLV_TYPES[tlv_type] == nil then
            if length > 0 then
                t:add(cf.tlv_value, v)
            end
            t:add_proto_expert_info(cx.tlv_unknown,
                string.format("Unknown TLV type 0x%04x", tlv_type))
        elseif not length_ok(tlv_type, length, value_tvb) then
            if length > 0 then
                t:add(cf.tlv_value, v)
            end
            len_item:add_proto_expert_info(cx.tlv_bad_length,
                string.format("%s value of %d bytes, not %s", name, length,
                    expected_lengths(tlv_type, length, value_tvb)))
            label = label .. " (bad length)"
        else
            local summary
            if tlv_type == 0x000B then
                t:add(cf.esn, tvb(offset, 4), true):set_generated()
                summary = add_tlv_value(t, tlv_type, nil, 0)
            else
                summary = add_tlv_value(t, tlv_type, value_tvb, length)
            end
            label = label .. ": " .. summary
            found[tlv_type] = found[tlv_type] or {}
            table.insert(found[tlv_type], summary)
        end
        t:set_text(label)
        offset = offset + 4 + length
    end
    return count
end

-- What the Info column adds for spec 1.1's messages, from the TLV summaries; or nil.
local function body_summary(opcode, status, found)
    if opcode == EVENT_OPCODE and found[0x0015] ~= nil then
        local text = found[0x0015][1]
        if found[0x0001] ~= nil then
            text = text .. " SA " .. found[0x0001][1]
        end
        return text
    end
    if opcode == 0x88 and status == 0 and found[0x0001] ~= nil then
        local entries = found[0x0014] ~= nil and #found[0x0014] or 0
        local cursor = found[0x0001][1]
        if cursor == "0" then
            return string.format("%d SAs, done", entries)
        end
        return string.format("%d SAs, next cursor %s", entries, cursor)
    end
    return nil
end

function cfg.dissector(tvb, pinfo, tree)
    local length = tvb:len()
    pinfo.cols.protocol:set("IPSEC-CFG")
    local item = add_proto(tree, cfg, tvb)
    if length < 12 then
        item:add_proto_expert_info(cx.truncated,
            string.format("%d bytes: the header needs 12", length))
        pinfo.cols.info:set("Config frame (truncated)")
        return length
    end
    local version = u(tvb, 0, 1)
    local opcode = u(tvb, 1, 1)
    local status = u(tvb, 2, 1)
    local txn_id = u(tvb, 6, 4)
    local tlv_length = u(tvb, 10, 2)
    local is_reply = opcode >= 0x80
    item:add(cf.version, tvb(0, 1))
    local op = item:add(cf.opcode, tvb(1, 1))
    op:add(cf.reply, tvb(1, 1))
    op:add(cf.request, tvb(1, 1))
    local status_item = item:add(cf.status, tvb(2, 1))
    item:add(cf.flags, tvb(3, 1))
    item:add(cf.port, tvb(4, 1))
    local reserved = item:add(cf.reserved, tvb(5, 1))
    item:add(cf.txn_id, tvb(6, 4))
    local len_item = item:add(cf.tlv_length, tvb(10, 2))

    local op_name = OPCODES[opcode % 0x80] or string.format("opcode 0x%02x", opcode % 0x80)
    local info = string.format("%s %s, txn %d", op_name, is_reply and "reply" or "request", txn_id)
    if is_reply then
        info = info .. ", " .. (CONFIG_STATUS[status] or string.format("status %d", status))
        if status ~= 0 then
            status_item:add_proto_expert_info(cx.status_error,
                string.format("%s: %s", op_name, CONFIG_STATUS[status] or tostring(status)))
        end
    end
    item:append_text(string.format(", %s", info))
    pinfo.cols.info:set(info)

    if version ~= 1 then
        item:add_proto_expert_info(cx.bad_version,
            string.format("Version %d: only the header is defined", version))
        if length > 12 then
            item:add(cf.body, tvb(12))
        end
        return length
    end
    if u(tvb, 5, 1) ~= 0 then
        reserved:add_proto_expert_info(cx.reserved)
    end
    local stop = 12 + tlv_length
    if stop > length then
        len_item:add_proto_expert_info(cx.bad_tlv_length,
            string.format("tlv_length %d, only %d bytes follow the header", tlv_length,
                length - 12))
        stop = length
    end
    local found = {}
    dissect_tlvs(tvb, item, 12, stop, found)
    local extra = body_summary(opcode, status, found)
    if extra ~= nil then
        item:append_text(", " .. extra)
        pinfo.cols.info:append(", " .. extra)
    end
    if stop < length then
        -- Ethernet padding of a short frame: not part of the message
        item:add(cf.padding, tvb(stop))
    end
    return length
end

-- registration -------------------------------------------------------------------------------

local function register()
    local meta_type = ethertype_pref(meta.prefs.ethertype, META_ETHERTYPE)
    local cfg_type = ethertype_pref(cfg.prefs.ethertype, CONFIG_ETHERTYPE)
    if registered.meta ~= meta_type then
        if registered.meta ~= nil then
            ethertype_table:remove(registered.meta, meta)
        end
        ethertype_table:add(meta_type, meta)
        registered.meta = meta_type
    end
    if registered.cfg ~= cfg_type then
        if registered.cfg ~= nil then
            ethertype_table:remove(registered.cfg, cfg)
        end
        ethertype_table:add(cfg_type, cfg)
        registered.cfg = cfg_type
    end
end

function meta.prefs_changed()
    register()
end

function cfg.prefs_changed()
    register()
end

register()
