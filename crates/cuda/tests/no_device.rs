//! Runs everywhere (CI has no GPU): opening a device never panics; without a
//! driver or GPU it is an error that says what is missing.

use rr_cuda::CudaBackend;

#[test]
fn opening_a_device_is_an_error_or_works_never_a_panic() {
    let result = std::panic::catch_unwind(|| CudaBackend::new(0).map(|_| ()));
    match result {
        Err(_) => panic!("CudaBackend::new panicked"),
        Ok(Ok(())) => eprintln!("a CUDA device is present"),
        Ok(Err(e)) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(msg.starts_with("cuda backend:"), "{msg}");
            assert!(msg.contains("not found") || msg.contains("device") || msg.contains("context"), "{msg}");
        }
    }
    // An ordinal past the last device is an error, not a panic.
    let far = std::panic::catch_unwind(|| CudaBackend::new(1000).map(|_| ())).expect("no panic");
    assert!(far.is_err());
}
