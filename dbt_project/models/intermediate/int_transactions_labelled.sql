{{ config(lookback_days=var('label_delay_days')) }}
{%- set cutoff = label_cutoff() -%}

with transactions as (

    select * from {{ ref('stg_landing__transactions') }}
    where tx_date >= {{ window_start(var('label_delay_days')) }} and tx_date < {{ window_end() }}

),

fraud_reports as (

    select * from {{ ref('stg_landing__fraud_reports') }}
    -- a report never precedes its transaction (ingestion quarantines it), so none older than the window
    where report_date >= {{ window_start(var('label_delay_days')) }}

),

known_reports as (

    select
        transaction_id,
        min(reported_at) as fraud_reported_at
    from fraud_reports
    {%- if cutoff %}
    where reported_at <= {{ cutoff }}
    {%- endif %}
    group by transaction_id

),

labelled as (

    select
        transactions.transaction_id,
        transactions.tx_datetime,
        transactions.tx_date,
        transactions.customer_id,
        transactions.terminal_id,
        transactions.tx_amount,
        known_reports.fraud_reported_at is not null as is_fraud,
        known_reports.fraud_reported_at
    from transactions
    left join known_reports
        on transactions.transaction_id = known_reports.transaction_id
    {%- if cutoff %}
    where transactions.tx_datetime <= {{ cutoff }}
    {%- endif %}

)

select * from labelled
