/// Errors from building or running a model (bad shapes, ids, positions, kernel sets).
public struct RuntimeError: Error, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}
