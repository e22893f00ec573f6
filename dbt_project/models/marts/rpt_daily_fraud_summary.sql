{{ config(lookback_days=var('label_delay_days')) }}

with transactions as (

    select * from {{ ref('fct_transactions') }}
    where tx_date >= {{ window_start(var('label_delay_days')) }} and tx_date < {{ window_end() }}

),

daily as (

    select
        tx_date,
        count(*) as tx_count,
        round(sum(tx_amount), 2) as total_amount,
        count(*) filter (where is_fraud) as fraud_tx_count,
        round(coalesce(sum(tx_amount) filter (where is_fraud), 0), 2) as fraud_amount
    from transactions
    group by tx_date

),

final as (

    select
        tx_date,
        tx_count,
        total_amount,
        fraud_tx_count,
        fraud_amount,
        fraud_tx_count / tx_count as fraud_rate
    from daily

)

select * from final
