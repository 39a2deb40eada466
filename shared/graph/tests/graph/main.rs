//! Integration tests: the client against tiny local servers that answer the way
//! Microsoft documents Entra ID and Graph to answer.

mod bad_answers;
mod delta;
mod groups;
mod retries;
mod subscriptions;
mod support;
mod token;
