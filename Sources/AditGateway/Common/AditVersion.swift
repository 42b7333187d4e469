/// The release, as `--version` prints it and the admin status page shows it.
public enum AditVersion {
    public static let current = "0.1.0"
}
