//! Simulated GPU machine state shared by all processes (see README in this folder).
