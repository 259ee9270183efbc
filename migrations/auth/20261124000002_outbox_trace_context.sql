-- The W3C trace context of the change that wrote each event, so the relay
-- publishes it (AMQP headers traceparent/tracestate) and the consumer's
-- apply continues the same trace. NULL for rows written without one.
ALTER TABLE outbox
    ADD COLUMN traceparent text,
    ADD COLUMN tracestate  text;
ALTER TABLE outbox_parked
    ADD COLUMN traceparent text,
    ADD COLUMN tracestate  text;
