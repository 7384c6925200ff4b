// Placeholder until proto/csi.proto lands; replaced by the CSI bindings build.
fn main() {}
