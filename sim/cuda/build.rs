fn main() {
    // Link like the real driver: the soname programs ask for, and -Bsymbolic so the library's calls to
    // its own functions bind inside it. Without it a preloaded libvgpu.so would interpose the
    // simulator's internal calls and tests would pass for the wrong reason.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
}
