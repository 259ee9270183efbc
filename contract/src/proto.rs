//! Code generated from `proto/` by the build script.
#![allow(unreachable_pub, missing_docs, clippy::all, clippy::pedantic)]

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("auth.v1");
    }
}

pub mod task {
    pub mod v1 {
        tonic::include_proto!("task.v1");
    }
}

/// Encoded descriptors of every service, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("memberflow_descriptor");
