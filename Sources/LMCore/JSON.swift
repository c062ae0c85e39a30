import CJSONC
import Foundation

/// A parsed JSON value. Objects keep their key order (json-c preserves insertion
/// order), so re-serialising is deterministic.
public indirect enum JSON: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    public static func == (a: JSON, b: JSON) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.int(x), .int(y)): return x == y
        case let (.double(x), .double(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    /// Parses UTF-8 JSON text with json-c.
    /// - Throws: `JSONError` with json-c's reason and the byte offset.
    public static func parse(_ bytes: UnsafeRawBufferPointer, source: String) throws -> JSON {
        guard let tok = json_tokener_new_ex(JSON_TOKENER_DEFAULT_DEPTH) else {
            throw JSONError(source: source, reason: "out of memory")
        }
        defer { json_tokener_free(tok) }
        json_tokener_set_flags(tok, Int32(JSON_TOKENER_STRICT))
        let obj = bytes.withMemoryRebound(to: CChar.self) { p in
            json_tokener_parse_ex(tok, p.baseAddress, Int32(p.count))
        }
        let err = json_tokener_get_error(tok)
        guard err == json_tokener_success, let obj else {
            let reason = err == json_tokener_continue ? "unexpected end of JSON" : String(cString: json_tokener_error_desc(err))
            throw JSONError(source: source, reason: "\(reason) at byte \(json_tokener_get_parse_end(tok))")
        }
        defer { json_object_put(obj) }
        let end = json_tokener_get_parse_end(tok)
        if end < bytes.count {
            // Allow only trailing whitespace (safetensors pads headers with spaces).
            for i in end..<bytes.count where ![0x20, 0x0A, 0x0D, 0x09].contains(bytes[i]) {
                throw JSONError(source: source, reason: "trailing data after JSON at byte \(i)")
            }
        }
        return convert(obj)
    }

    public static func parse(_ data: [UInt8], source: String) throws -> JSON {
        try data.withUnsafeBytes { try parse($0, source: source) }
    }

    /// Reads and parses a JSON file.
    public static func parse(file path: String) throws -> JSON {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw IOError(path: path, reason: "cannot read file")
        }
        return try data.withUnsafeBytes { try parse($0, source: path) }
    }

    private static func convert(_ o: OpaquePointer?) -> JSON {
        guard let o else { return .null }
        switch json_object_get_type(o) {
        case json_type_null: return .null
        case json_type_boolean: return .bool(json_object_get_boolean(o) != 0)
        case json_type_int: return .int(json_object_get_int64(o))
        case json_type_double: return .double(json_object_get_double(o))
        case json_type_string:
            let len = Int(json_object_get_string_len(o))
            let p = json_object_get_string(o)!
            return .string(p.withMemoryRebound(to: UInt8.self, capacity: len) {
                String(decoding: UnsafeBufferPointer(start: $0, count: len), as: UTF8.self)
            })
        case json_type_array:
            let n = json_object_array_length(o)
            var out: [JSON] = []
            out.reserveCapacity(n)
            for i in 0..<n { out.append(convert(json_object_array_get_idx(o, i))) }
            return .array(out)
        case json_type_object:
            var out: [(String, JSON)] = []
            var it = json_object_iter_begin(o)
            var end = json_object_iter_end(o)
            while json_object_iter_equal(&it, &end) == 0 {
                let key = String(cString: json_object_iter_peek_name(&it))
                out.append((key, convert(json_object_iter_peek_value(&it))))
                json_object_iter_next(&it)
            }
            return .object(out)
        default: return .null
        }
    }

    // MARK: access

    /// The value for `key` in an object (first match), or nil.
    public subscript(key: String) -> JSON? {
        if case let .object(kv) = self { return kv.first { $0.0 == key }?.1 }
        return nil
    }
    public var string: String? { if case let .string(s) = self { return s }; return nil }
    public var bool: Bool? { if case let .bool(b) = self { return b }; return nil }
    public var array: [JSON]? { if case let .array(a) = self { return a }; return nil }
    public var object: [(String, JSON)]? { if case let .object(o) = self { return o }; return nil }
    public var isNull: Bool { if case .null = self { return true }; return false }
    /// Integer value (also accepts an integral double).
    public var int: Int? {
        switch self {
        case let .int(i): return Int(exactly: i)
        case let .double(d): return d.rounded() == d && abs(d) < 9e15 ? Int(d) : nil
        default: return nil
        }
    }
    /// Numeric value as Double.
    public var double: Double? {
        switch self {
        case let .int(i): return Double(i)
        case let .double(d): return d
        default: return nil
        }
    }

    // MARK: serialisation

    /// Compact or pretty serialisation; deterministic (key order preserved).
    public func serialized(pretty: Bool = false) -> String {
        var out = ""
        write(into: &out, pretty: pretty, indent: 0)
        return out
    }

    private func write(into out: inout String, pretty: Bool, indent: Int) {
        switch self {
        case .null: out += "null"
        case let .bool(b): out += b ? "true" : "false"
        case let .int(i): out += String(i)
        case let .double(d):
            if d.isFinite {
                if d == d.rounded() && abs(d) < 1e15 { out += String(format: "%.1f", d) } else { out += "\(d)" }
            } else { out += "null" }
        case let .string(s): JSON.escape(s, into: &out)
        case let .array(a):
            if a.isEmpty { out += "[]"; return }
            out += "["
            for (i, v) in a.enumerated() {
                if i > 0 { out += "," }
                if pretty { out += "\n" + String(repeating: "  ", count: indent + 1) }
                v.write(into: &out, pretty: pretty, indent: indent + 1)
            }
            if pretty { out += "\n" + String(repeating: "  ", count: indent) }
            out += "]"
        case let .object(kv):
            if kv.isEmpty { out += "{}"; return }
            out += "{"
            for (i, (k, v)) in kv.enumerated() {
                if i > 0 { out += "," }
                if pretty { out += "\n" + String(repeating: "  ", count: indent + 1) }
                JSON.escape(k, into: &out)
                out += pretty ? ": " : ":"
                v.write(into: &out, pretty: pretty, indent: indent + 1)
            }
            if pretty { out += "\n" + String(repeating: "  ", count: indent) }
            out += "}"
        }
    }

    static func escape(_ s: String, into out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        out += "\""
    }
}

/// Malformed JSON, naming its source (file) and json-c's reason.
public struct JSONError: Error, CustomStringConvertible {
    public let source: String
    public let reason: String
    public var description: String { "\(source): malformed JSON: \(reason)" }
}
