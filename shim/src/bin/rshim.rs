//! See the `rshim` library: containerd shim v2 driving runr.

fn main() {
    rshim::main()
}
