{{ config(lookback_days=var('label_delay_days')) }}

with labelled as (

    select * from {{ ref('int_transactions_labelled') }}
    where tx_date >= {{ window_start(var('label_delay_days')) }} and tx_date < {{ window_end() }}

),

final as (

    select
        transaction_id,
        tx_datetime,
        tx_date,
        customer_id,
        terminal_id,
        tx_amount,
        is_fraud,
        fraud_reported_at
    from labelled

)

select * from final
