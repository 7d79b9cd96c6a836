//! Protocol v1 wire types shared by the launcher and the fake backend.
